"""Settings schema, loading and provisioning state; default config, systemd unit and udev rules."""
