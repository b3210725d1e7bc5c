"""The rules every layer of the engine shares (torch-free): the engine's own options, the
label-free threshold rule and the checks of a fitted model's record."""
