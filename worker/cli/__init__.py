"""The ``provisioner`` command."""
