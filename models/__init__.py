"""Model definitions: guide/retrain classifiers (timm registry) and the tiny SD prior builder."""
