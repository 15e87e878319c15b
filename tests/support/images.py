"""Real, tiny container images for the tests: a busybox root made into SquashFS (what
Charliecloud runs) or wrapped into a SIF (what Apptainer runs), with its own
/etc/os-release so a job can tell it ran inside."""
import os
import shutil
import subprocess
import tempfile

BUSYBOX = "/bin/busybox"
# What ch-run binds onto must exist in the read-only image: /dev /proc /sys always, the
# home and tmp directories, /mnt/0-9 (the kit binds the job's directories there), and
# the /etc files it replaces for the run.
DIRS = ("dev", "proc", "sys", "tmp", "home", "run", "root", "var", "mnt/0", "mnt/1", "mnt/2",
        "mnt/3", "mnt/4", "mnt/5", "mnt/6", "mnt/7", "mnt/8", "mnt/9")
ETC_FILES = ("passwd", "group", "hosts", "resolv.conf")


def os_release(name, version="1.0"):
    return (f'NAME="{name}"\nID=kitimage\nVERSION_ID="{version}"\n'
            f'PRETTY_NAME="{name} {version} (sge-image-kit test image)"\n')


def busybox_root(root, release):
    """Populate `root` with busybox, its applets as links, and `release` as os-release."""
    os.makedirs(os.path.join(root, "bin"))
    shutil.copy2(BUSYBOX, os.path.join(root, "bin", "busybox"))
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for a in applets:
        if a != "busybox":
            os.symlink("busybox", os.path.join(root, "bin", a))
    for d in DIRS:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    os.makedirs(os.path.join(root, "etc"), exist_ok=True)
    for f in ETC_FILES:
        open(os.path.join(root, "etc", f), "w").close()
    with open(os.path.join(root, "etc", "os-release"), "w") as f:
        f.write(release)


def squashfs_image(release):
    """Bytes of a SquashFS image of a busybox root whose /etc/os-release is `release`."""
    with tempfile.TemporaryDirectory() as d:
        root = os.path.join(d, "root")
        busybox_root(root, release)
        out = os.path.join(d, "image.sqfs")
        subprocess.run(["mksquashfs", root, out, "-noappend", "-quiet", "-all-root"],
                       check=True, capture_output=True)
        with open(out, "rb") as f:
            return f.read()


def sif_image(release):
    """Bytes of a SIF whose system partition is `squashfs_image(release)` (siftool)."""
    with tempfile.TemporaryDirectory() as d:
        sqfs = os.path.join(d, "root.sqfs")
        with open(sqfs, "wb") as f:
            f.write(squashfs_image(release))
        sif = os.path.join(d, "image.sif")
        subprocess.run(["siftool", "new", sif], check=True, capture_output=True)
        subprocess.run(["siftool", "add", "--datatype", "4", "--parttype", "1", "--partfs", "1",
                        "--partarch", "2", sif, sqfs], check=True, capture_output=True)
        with open(sif, "rb") as f:
            return f.read()
