"""Extra ``lit-cv`` commands beside LightningCLI's fit/validate/test/predict (see ``lit_cv.cli.EXTRA_COMMANDS``)."""
