from hessaudit.cli import main

main()
