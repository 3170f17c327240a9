"""The power path: everything that reads or changes a board's frequency and power.

``board``        the narrow interface the dispatcher runs on (:class:`Board`, :class:`RunCost`)
``backends``     the boards themselves: virtual, cpufreq sysfs, null; opened from a spec string
``spec``         the ``--board`` spec as the command line gives it (``none`` included)
``cpufreq``      cpufreq over sysfs: lease, save, apply, verify, restore, crash recovery
``fakesysfs``    fake cpufreq trees on disk shaped like real boards, and a kernel that reacts
``lease``        one owner per state directory (an ``flock`` the kernel drops with its holder)
``meters``       energy meters: RAPL, hwmon power sensors, the profile's model; CO2e accounting
``freqdaemons``  other frequency daemons that would fight over the same files
"""
