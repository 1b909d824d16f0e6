"""From a finished search to a submission: promote a trial's model, predict a test folder, score."""
