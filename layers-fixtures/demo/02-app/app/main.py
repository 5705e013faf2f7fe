#!/usr/bin/python3
print("hello from the app")
