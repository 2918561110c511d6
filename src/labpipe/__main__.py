from labpipe.cli import main

main()
