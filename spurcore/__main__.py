from spurcore.cli import main

main()
