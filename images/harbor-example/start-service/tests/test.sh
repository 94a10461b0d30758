#!/bin/bash
# Start the service as configured now, ask it, and compare with the answer and the known total.
python3 /tests/check_service.py
