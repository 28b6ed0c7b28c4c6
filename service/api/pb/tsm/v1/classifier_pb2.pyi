from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Sampling(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SAMPLING_UNSPECIFIED: _ClassVar[Sampling]
    SAMPLING_UNIFORM: _ClassVar[Sampling]
    SAMPLING_KEYFRAMES: _ClassVar[Sampling]
SAMPLING_UNSPECIFIED: Sampling
SAMPLING_UNIFORM: Sampling
SAMPLING_KEYFRAMES: Sampling

class ClassifyOptions(_message.Message):
    __slots__ = ("top_k", "model", "clips", "crops", "sampling", "filename", "content_type", "no_cache", "decoder")
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CLIPS_FIELD_NUMBER: _ClassVar[int]
    CROPS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    NO_CACHE_FIELD_NUMBER: _ClassVar[int]
    DECODER_FIELD_NUMBER: _ClassVar[int]
    top_k: int
    model: str
    clips: int
    crops: int
    sampling: Sampling
    filename: str
    content_type: str
    no_cache: bool
    decoder: str
    def __init__(self, top_k: _Optional[int] = ..., model: _Optional[str] = ..., clips: _Optional[int] = ..., crops: _Optional[int] = ..., sampling: _Optional[_Union[Sampling, str]] = ..., filename: _Optional[str] = ..., content_type: _Optional[str] = ..., no_cache: _Optional[bool] = ..., decoder: _Optional[str] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("options", "video")
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    options: ClassifyOptions
    video: bytes
    def __init__(self, options: _Optional[_Union[ClassifyOptions, _Mapping]] = ..., video: _Optional[bytes] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("classification",)
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    classification: Classification
    def __init__(self, classification: _Optional[_Union[Classification, _Mapping]] = ...) -> None: ...

class ClassifyStreamRequest(_message.Message):
    __slots__ = ("options", "chunk")
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    options: ClassifyOptions
    chunk: bytes
    def __init__(self, options: _Optional[_Union[ClassifyOptions, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class ClassifyStreamResponse(_message.Message):
    __slots__ = ("classification",)
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    classification: Classification
    def __init__(self, classification: _Optional[_Union[Classification, _Mapping]] = ...) -> None: ...

class TimelineOptions(_message.Message):
    __slots__ = ("options", "window_s", "stride_s")
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    STRIDE_S_FIELD_NUMBER: _ClassVar[int]
    options: ClassifyOptions
    window_s: float
    stride_s: float
    def __init__(self, options: _Optional[_Union[ClassifyOptions, _Mapping]] = ..., window_s: _Optional[float] = ..., stride_s: _Optional[float] = ...) -> None: ...

class ClassifyTimelineRequest(_message.Message):
    __slots__ = ("options", "chunk")
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    options: TimelineOptions
    chunk: bytes
    def __init__(self, options: _Optional[_Union[TimelineOptions, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class ClassifyTimelineResponse(_message.Message):
    __slots__ = ("window", "classification")
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    window: TimelineWindow
    classification: Classification
    def __init__(self, window: _Optional[_Union[TimelineWindow, _Mapping]] = ..., classification: _Optional[_Union[Classification, _Mapping]] = ...) -> None: ...

class TimelineWindow(_message.Message):
    __slots__ = ("index", "start_s", "end_s", "predictions")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    START_S_FIELD_NUMBER: _ClassVar[int]
    END_S_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    index: int
    start_s: float
    end_s: float
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    def __init__(self, index: _Optional[int] = ..., start_s: _Optional[float] = ..., end_s: _Optional[float] = ..., predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ...) -> None: ...

class TimelineSegment(_message.Message):
    __slots__ = ("label", "index", "start_s", "end_s", "score")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    START_S_FIELD_NUMBER: _ClassVar[int]
    END_S_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    label: str
    index: int
    start_s: float
    end_s: float
    score: float
    def __init__(self, label: _Optional[str] = ..., index: _Optional[int] = ..., start_s: _Optional[float] = ..., end_s: _Optional[float] = ..., score: _Optional[float] = ...) -> None: ...

class Timeline(_message.Message):
    __slots__ = ("window_s", "stride_s", "windows", "segments")
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    STRIDE_S_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    window_s: float
    stride_s: float
    windows: _containers.RepeatedCompositeFieldContainer[TimelineWindow]
    segments: _containers.RepeatedCompositeFieldContainer[TimelineSegment]
    def __init__(self, window_s: _Optional[float] = ..., stride_s: _Optional[float] = ..., windows: _Optional[_Iterable[_Union[TimelineWindow, _Mapping]]] = ..., segments: _Optional[_Iterable[_Union[TimelineSegment, _Mapping]]] = ...) -> None: ...

class Classification(_message.Message):
    __slots__ = ("request_id", "model", "predictions", "video", "clips", "crops", "timings", "timeline")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    CLIPS_FIELD_NUMBER: _ClassVar[int]
    CROPS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    TIMELINE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: ModelRef
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    video: VideoFacts
    clips: int
    crops: int
    timings: Timings
    timeline: Timeline
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ..., predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ..., video: _Optional[_Union[VideoFacts, _Mapping]] = ..., clips: _Optional[int] = ..., crops: _Optional[int] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., timeline: _Optional[_Union[Timeline, _Mapping]] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("name", "version", "untrained")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UNTRAINED_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    untrained: bool
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., untrained: _Optional[bool] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("label", "index", "score")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    label: str
    index: int
    score: float
    def __init__(self, label: _Optional[str] = ..., index: _Optional[int] = ..., score: _Optional[float] = ...) -> None: ...

class VideoFacts(_message.Message):
    __slots__ = ("container", "codec", "width", "height", "frames", "fps", "duration_s", "rotation", "decoder", "decoder_fallback")
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    ROTATION_FIELD_NUMBER: _ClassVar[int]
    DECODER_FIELD_NUMBER: _ClassVar[int]
    DECODER_FALLBACK_FIELD_NUMBER: _ClassVar[int]
    container: str
    codec: str
    width: int
    height: int
    frames: int
    fps: float
    duration_s: float
    rotation: int
    decoder: str
    decoder_fallback: str
    def __init__(self, container: _Optional[str] = ..., codec: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., frames: _Optional[int] = ..., fps: _Optional[float] = ..., duration_s: _Optional[float] = ..., rotation: _Optional[int] = ..., decoder: _Optional[str] = ..., decoder_fallback: _Optional[str] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("upload_ms", "decode_ms", "queue_ms", "inference_ms", "total_ms")
    UPLOAD_MS_FIELD_NUMBER: _ClassVar[int]
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    upload_ms: float
    decode_ms: float
    queue_ms: float
    inference_ms: float
    total_ms: float
    def __init__(self, upload_ms: _Optional[float] = ..., decode_ms: _Optional[float] = ..., queue_ms: _Optional[float] = ..., inference_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "repository")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    repository: _containers.RepeatedCompositeFieldContainer[ModelVersionState]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., repository: _Optional[_Iterable[_Union[ModelVersionState, _Mapping]]] = ...) -> None: ...

class ModelVersionState(_message.Message):
    __slots__ = ("name", "version", "state", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    state: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "is_default", "arch", "num_segments", "num_classes", "input_size", "scale_size", "shift", "untrained", "source", "resize", "engine", "precision", "online")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    NUM_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    SCALE_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHIFT_FIELD_NUMBER: _ClassVar[int]
    UNTRAINED_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    RESIZE_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    is_default: bool
    arch: str
    num_segments: int
    num_classes: int
    input_size: int
    scale_size: int
    shift: bool
    untrained: bool
    source: str
    resize: str
    engine: str
    precision: str
    online: bool
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., is_default: _Optional[bool] = ..., arch: _Optional[str] = ..., num_segments: _Optional[int] = ..., num_classes: _Optional[int] = ..., input_size: _Optional[int] = ..., scale_size: _Optional[int] = ..., shift: _Optional[bool] = ..., untrained: _Optional[bool] = ..., source: _Optional[str] = ..., resize: _Optional[str] = ..., engine: _Optional[str] = ..., precision: _Optional[str] = ..., online: _Optional[bool] = ...) -> None: ...

class LiveRequest(_message.Message):
    __slots__ = ("options", "frame")
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    options: LiveOptions
    frame: Frame
    def __init__(self, options: _Optional[_Union[LiveOptions, _Mapping]] = ..., frame: _Optional[_Union[Frame, _Mapping]] = ...) -> None: ...

class LiveOptions(_message.Message):
    __slots__ = ("model", "top_k", "smoothing_frames", "frame_stride")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SMOOTHING_FRAMES_FIELD_NUMBER: _ClassVar[int]
    FRAME_STRIDE_FIELD_NUMBER: _ClassVar[int]
    model: str
    top_k: int
    smoothing_frames: int
    frame_stride: int
    def __init__(self, model: _Optional[str] = ..., top_k: _Optional[int] = ..., smoothing_frames: _Optional[int] = ..., frame_stride: _Optional[int] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("data", "format", "width", "height", "pts_us")
    DATA_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    PTS_US_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    format: str
    width: int
    height: int
    pts_us: int
    def __init__(self, data: _Optional[bytes] = ..., format: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., pts_us: _Optional[int] = ...) -> None: ...

class LiveResponse(_message.Message):
    __slots__ = ("frame_index", "pts_us", "predictions", "instant", "latency_ms", "dropped_frames")
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    PTS_US_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    INSTANT_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FRAMES_FIELD_NUMBER: _ClassVar[int]
    frame_index: int
    pts_us: int
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    instant: _containers.RepeatedCompositeFieldContainer[Prediction]
    latency_ms: float
    dropped_frames: int
    def __init__(self, frame_index: _Optional[int] = ..., pts_us: _Optional[int] = ..., predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ..., instant: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ..., latency_ms: _Optional[float] = ..., dropped_frames: _Optional[int] = ...) -> None: ...
