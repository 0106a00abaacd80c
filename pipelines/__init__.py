"""The noisyad Kubeflow pipeline: definition, compile, local run, command line."""
