from sellerbak.cli import main

main()
