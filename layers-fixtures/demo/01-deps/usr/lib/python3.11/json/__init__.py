# json placeholder
