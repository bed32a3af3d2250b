# Test scaffolding: CircuitPython's board module, pin names only (what the emulators key on).
class Pin:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return "board." + self.name


TX = Pin("TX")
RX = Pin("RX")
SCL = Pin("SCL")
SDA = Pin("SDA")
D5 = Pin("D5")
D6 = Pin("D6")
D9 = Pin("D9")
D10 = Pin("D10")
