from devices.sim.simulators import main

main()
