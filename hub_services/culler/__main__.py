from hub_services.culler.app import main

main()
