module urna/vote-go

go 1.24
