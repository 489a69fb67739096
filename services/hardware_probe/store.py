"""The probe keeps nothing persistent but its host id (runtime.hostid); samples go to the bus."""
