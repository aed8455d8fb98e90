"""The test suite; its folders mirror src/svfseg (tests/svf tests svfseg.svf, ...)."""
