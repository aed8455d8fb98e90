"""Entry-point logic behind train.py and eval.py (kept out of the scripts so tests can call it)."""
