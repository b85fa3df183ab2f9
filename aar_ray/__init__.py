pkg
