"""Build the paper's denoising supernet, derive a genotype, save and draw it, build the derived network."""

import hinas

supernet = hinas.Supernet(hinas.preset("paper-denoise"))
genotype = supernet.genotype()
json_path = genotype.save("runs/quickstart/genotype.json")
drawings = hinas.draw_genotype(genotype, "runs/quickstart/genotype")
model = hinas.Network(genotype, filters=20)

print(f"supernet: {hinas.count_params(supernet):,} parameters")
print(f"derived network: {hinas.count_params(model) / 1e6:.3f} M parameters, "
      f"{hinas.count_flops(model, (1, 1, 256, 256)) / 1e9:.1f} GFLOP at 256x256")
print(f"genotype: {json_path}")
print("drawings: " + ", ".join(map(str, drawings)))
