"""The Lightning training loop: module, optimizer and schedule, TAO's checkpoint and status callbacks, trainer."""
