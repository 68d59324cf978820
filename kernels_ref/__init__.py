"""Reference codecs and math (numpy only). Each function cites the spec or upstream function
whose bits it reproduces; fast kernels live elsewhere and are checked against these."""
