from ratecared.cli import main

main()
