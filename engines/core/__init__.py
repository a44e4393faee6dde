"""What every backend shares: the loop, component specs, text encoders, module wrappers, machine facts."""
