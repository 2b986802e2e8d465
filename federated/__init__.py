"""Federated training and unlearning: plain client/server functions shared by the in-process simulation and Flower."""
