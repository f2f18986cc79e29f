"""The capture stage: everything that imports torch (loading, generation, recording, saliency, neurons, batch).

Named `capturing` so that the package never shadows the API function `att_report.capture`. Importing this package
itself imports nothing heavy: `config` stays torch-free for the CLI's argument parsing.
"""
