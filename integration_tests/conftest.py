"""Shared fixtures for the cross-package tests."""
