"""sge-image-kit: container images that start fast and never fail on Grid Engine."""

# The one source of the version (setup.cfg reads it): install writes it into every
# launcher, so an upgrade changes each launcher's text and mtime, and Grid Engine
# restarts the long-running hooks (JSV, load sensor with its agent) on the new code.
__version__ = "0.2.0"
