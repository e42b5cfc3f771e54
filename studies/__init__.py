"""Study orchestration (guidance sweeps, the domain-shift study): grids of expansion settings,
their runs and their tables. Built on distdiff; the method itself never imports this package."""
