"""Will a train step fit a target (TPU) topology: compile-only reports."""
