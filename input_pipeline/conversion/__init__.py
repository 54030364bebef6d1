"""Images -> TFRecords, one module per stage (the command line is `input_pipeline.make_tfrecords`).

  classes        finds the class folders and their files (parent process)
  planning       drops unreadable files and copies, plans splits and shards (parent)
  encoding       decodes, converts to RGB, shrinks and encodes one image (workers)
  parallel       runs that work in order in worker processes, memory bounded
  writing        checks the output folder, writes shards and metadata (parent only)
  records_info   records_info.json's content and the end-of-run summary
  tfds_metadata  the TFDS metadata that makes the shards a TFDS data set too
  tfds_source    a prepared TFDS data set as the input, instead of a folder
  pipeline       `convert()`: the stages above, start to end
  options        `ConvertOptions`, its bounds and `ConversionError`

Spawned workers import `parallel` and `encoding`, which import neither
TensorFlow nor any module that does; nor does this file, which every
worker imports on the way. The parent-side modules import TensorFlow at
the top.
"""
