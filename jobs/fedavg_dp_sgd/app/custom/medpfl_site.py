"""NVFlare site entry script shipped in each MedPFL job's ``app/custom/``.

All logic lives in the installed ``medpfl_app`` package (install it at every site); this script only hands the
job's ``train_args`` to it.
"""

from medpfl_app.nvflare.site.client import main

if __name__ == "__main__":
    main()
