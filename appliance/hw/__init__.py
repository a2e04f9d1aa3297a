"""The hardware layer: power (fence) devices, heartbeat wires, the status LED.

Everything here is a library the agent wires in; none of it knows the protocol beyond the
:class:`~appliance.protocols.failure_detector.WireState` verdicts it reports. GPIO goes through
gpiozero devices built with an injectable ``pin_factory`` (``None``: gpiozero's default, lgpio
on a Pi; ``gpiozero.pins.mock.MockFactory`` in tests), and every periodic activity is a chain
of event-loop callbacks, never a thread, so a hung agent shows on the wire and on the LED.

* :mod:`appliance.hw.power`: fence devices (GPIO relay, Tasmota, Shelly Gen2, command).
* :mod:`appliance.hw.fencer`: fencing levels, power-cycle, the wire proof and the health check.
* :mod:`appliance.hw.heartbeat`: the heartbeat wire out and the wires in.
* :mod:`appliance.hw.leds`: the status LED.
"""
