module podmigrate.invalid/counter

go 1.24
