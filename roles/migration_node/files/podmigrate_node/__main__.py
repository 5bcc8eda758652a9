# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""`python3 -m podmigrate_node` (the archive's own entry point does the same)."""

from podmigrate_node.cli import main

main()
