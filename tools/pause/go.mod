module podmigrate.invalid/pause

go 1.24
