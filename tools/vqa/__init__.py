"""Stepwise chest X-ray VQA (Step-CoT): teacher and student models and the answer_stepwise tool."""
