#!/bin/bash
python3 /tests/checker.py
