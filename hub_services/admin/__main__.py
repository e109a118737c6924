from hub_services.admin.app import main

main()
