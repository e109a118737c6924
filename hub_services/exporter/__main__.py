from hub_services.exporter.app import main

main()
