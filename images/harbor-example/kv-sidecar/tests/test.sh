#!/bin/bash
python3 /tests/check_store.py
