"""Which queues install warns about, per engine (sge/ge/engine_quirks.py)."""
from sge.ge.engine_quirks import identify, interactive_prolog_warnings

QTYPES = {"all.q": "BATCH INTERACTIVE", "batch.q": "BATCH", "int.q": "INTERACTIVE"}


def test_identify_reads_the_first_line_of_qconf_help():
    assert identify("SGE 8.1.9") == ("SGE", "8.1.9")
    assert identify("OCS 9.1.4") == ("OCS", "9.1.4")
    assert identify("usage: qconf [options]") is None
    assert identify("") is None


def test_son_of_grid_engine_warns_for_interactive_queues_with_a_non_root_admin():
    lines = interactive_prolog_warnings(("SGE", "8.1.9"), "sgeadmin", QTYPES)
    assert [ln.split()[2] for ln in lines] == ["all.q", "int.q"]
    assert all("qrsh -pty n" in ln and "admin_user is not root" in ln for ln in lines)


def test_son_of_grid_engine_with_root_as_admin_user_is_not_affected():
    # the shepherd's failing egid reset needs an effective uid other than root
    assert interactive_prolog_warnings(("SGE", "8.1.9"), "root", QTYPES) == []


def test_open_cluster_scheduler_warns_against_pty_n_whatever_the_admin_user():
    for admin in ("root", "sgeadmin"):
        lines = interactive_prolog_warnings(("OCS", "9.1.4"), admin, QTYPES)
        assert [ln.split()[2] for ln in lines] == ["all.q", "int.q"]
        assert all("must not pass -pty n" in ln for ln in lines)


def test_unknown_engines_and_versions_get_no_warning():
    assert interactive_prolog_warnings(None, "sgeadmin", QTYPES) == []
    assert interactive_prolog_warnings(("SGE", "8.1.9"), "sgeadmin", {"b.q": "BATCH"}) == []
    assert interactive_prolog_warnings(("OCS", "9.2.0"), "sgeadmin", QTYPES) == []
    assert interactive_prolog_warnings(("SGE", "6.2u5"), "sgeadmin", QTYPES) == []


def test_admin_user_is_found_without_sge_root(tmp_path, monkeypatch):
    """install --dry-run without the Grid Engine environment once lost the warning: the
    admin user was taken for root. The cell is found from the qconf on PATH."""
    import os

    from sge.ge import install_check
    root = tmp_path / "ge"
    (root / "bin" / "lx-amd64").mkdir(parents=True)
    (root / "default" / "common").mkdir(parents=True)
    (root / "default" / "common" / "bootstrap").write_text("admin_user      sgeadmin\n")
    qconf = root / "bin" / "lx-amd64" / "qconf"
    qconf.write_text("#!/bin/sh\n")
    qconf.chmod(0o755)
    monkeypatch.delenv("SGE_ROOT", raising=False)
    monkeypatch.delenv("SGE_CELL", raising=False)
    monkeypatch.setenv("PATH", f"{qconf.parent}{os.pathsep}{os.environ['PATH']}")
    assert install_check.bootstrap_admin_user() == "sgeadmin"
    # An unreadable cell is not taken for a root admin: the caller keeps the warning.
    monkeypatch.setenv("SGE_ROOT", str(tmp_path / "nowhere"))
    assert install_check.bootstrap_admin_user() is None
    assert interactive_prolog_warnings(("SGE", "8.1.9"), "(unknown)", QTYPES)
