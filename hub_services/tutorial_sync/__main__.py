from hub_services.tutorial_sync.app import main

main()
