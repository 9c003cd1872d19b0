"""The model and its life: data, classifier, fine-tuning and evaluation."""
