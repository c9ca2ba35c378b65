"""The library behind the scripts (it imports none of them). Where each concern lives:

the method   methods.py     NPID and NPID+CLD behind one interface: loss = method(model, images, index,
                            autocast); backward; method.update()
  the loss   NCEAverage.py  the bank of NCE (K negatives) and its scores; NCECriterion.py the NCE loss;
             LinearAverage.py the full non-parametric softmax (the authors' file names)
  the bank   memory.py      the memory bank: init, the momentum update, rank sync; ops.py the chunked kernels
training     engine.py      Task, train_one_epoch, evaluation, the run; data.py the seeded data pipeline
runs         runs.py        run identity (check_same_run, for every script) and resume; checkpoint.py the one
                            checkpoint reader and atomic writer (and the authors' pickles, restricted)
evaluation   knn.py         the weighted kNN (a pure classifier over features); features.py the one feature
                            extractor and backbone loader; svm.py the SVMs; export.py, report.py (pictures,
                            TensorBoard)
the rest     dist.py (torchrun), amp.py (autocast), gpu_aug.py (batched augmentation), options.py (flags),
             errors.py (the one-line error)
The datasets and their registry are in datasets/ (registry.py), the networks in models/."""
