"""Per-host inventory of installed models and downloads; consumes cmd.provisioner.provision.v1."""
