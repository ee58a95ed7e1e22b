from ratecarectl.cli import main

main()
