#!/bin/bash
cd /app
awk '$9 ~ /^5/ {print $1}' access.log | sort | uniq -c | sort -k1,1nr -k2,2 | head -3 | awk '{print $1, $2}' > report.txt
