"""The end-to-end demo of the usage pipeline (``bash scripts/demo.sh``)."""
