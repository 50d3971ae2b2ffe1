"""Selective-Stereo disparity, depth, confidence and point cloud for a rectified stereo camera.

    ros2 launch sgru_ros stereo.launch.py
    ros2 launch sgru_ros stereo.launch.py use_sample_source:=true use_rviz:=true
    ros2 launch sgru_ros stereo.launch.py namespace:=stereo model:=/path/sceneflow.pth iterations:=32 device:=cuda
    ros2 launch sgru_ros stereo.launch.py params_file:=my_robot.yaml approximate_sync:=true
    ros2 launch sgru_ros stereo.launch.py rectify:=true use_sample_source:=true    # a raw, distorted camera

Inputs (as stereo_image_proc): <namespace>/<left_namespace>/image_rect (image_rect_color while both
cameras publish it; .../compressed with image_transport:=compressed) and the camera_info beside it,
the same for <right_namespace>. With rectify:=true (where stereo_image_proc's launch file would start
image_proc): <camera>/image_raw, rectified in the node with the camera_info's D, K, R, P.
Outputs under <namespace>: disparity, points2, depth/image_rect, depth/camera_info, confidence,
disparity/color.

Node parameters come from params_file (default: config/stereo.yaml); a node argument below
overrides it only when given on the command line (its default, empty, leaves the file's value).
"""

import os
import tempfile

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

#: Node parameters a launch argument can override: name -> (type, description). Strings stay
#: strings; the others are parsed as YAML (true, 0.05, 16) and converted to the type where they
#: can be (1 -> 1.0 for a float); the node checks type and range.
NODE_ARGUMENTS = {
    'model': (str, "Checkpoint file (authors' .pth or this package's), or a bundled model: compact (default) "
                   "or fast"),
    'iterations': (int, 'GRU iterations per frame'),
    'init': (str, 'none, or sgbm: start the GRU from OpenCV SGBM\'s map (a classical prior)'),
    'device': (str, 'auto, cpu, cuda or cuda:N'),
    'precision': (str, 'fp32, fp16 (CUDA) or bf16'),
    'graphs': (bool, 'CUDA: replay each camera size\'s pass as a CUDA graph'),
    'image_transport': (str, 'raw, or compressed: subscribe to <camera>/image_rect/compressed'),
    'rectify': (bool, 'Subscribe <camera>/image_raw and rectify in the node (raw camera, no image_proc)'),
    'confidence_threshold': (float, 'Disparities less confident than this (0..1) are invalid; 0: off'),
    'approximate_sync': (bool, 'Match inputs by nearest stamp instead of identical stamps'),
    'approximate_sync_tolerance_seconds': (float, 'Largest stamp spread of an approximate set'),
    'use_color': (bool, 'Colour the point cloud from the left image'),
    'avoid_point_cloud_padding': (bool, '16-byte points instead of 32'),
    'max_width': (int, 'Downscale wider images to this width before the network (0: never)'),
    'threads': (int, 'CPU threads of the network (0: one per core)'),
}


def _node_overrides(context):
    """The node arguments given on the command line, typed: everything else comes from params_file."""
    import yaml

    overrides = {}
    for name, (kind, _) in NODE_ARGUMENTS.items():
        text = LaunchConfiguration(name).perform(context)
        if text != '':
            overrides[name] = text if kind is str else _typed(yaml.safe_load(text), kind)
    return overrides


def _typed(value, kind):
    """1 -> 1.0 for a float parameter (rclpy rejects an integer there); what does not convert is
    passed on as it is, for the node to reject with a one-line reason."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _camera_remappings(context, publisher):
    """Each image topic (image_rect, image_raw) to <left_namespace>/... (the node finds camera_info and
    image_rect_color beside it); the sample source, a publisher, needs each of its topics remapped."""
    remappings = []
    for side in ('left', 'right'):
        camera = LaunchConfiguration(f'{side}_namespace').perform(context)
        for image in ('image_rect', 'image_raw'):
            remappings.append((f'{side}/{image}', f'{camera}/{image}'))
            if publisher:
                remappings.append((f'{side}/{image}/compressed', f'{camera}/{image}/compressed'))
        if publisher:
            remappings.append((f'{side}/camera_info', f'{camera}/camera_info'))
    return remappings


def _is_true(context, name):
    return LaunchConfiguration(name).perform(context).lower() in ('true', '1', 'yes')


def _launch_setup(context):
    from sgru_ros.rviz_config import rviz_config

    share = get_package_share_directory('sgru_ros')
    namespace = LaunchConfiguration('namespace').perform(context)
    overrides = _node_overrides(context)
    stereo = dict(name='sgru_stereo', namespace=namespace, package='sgru_ros', output='screen',
                  parameters=[LaunchConfiguration('params_file').perform(context), overrides],
                  remappings=_camera_remappings(context, publisher=False))
    actions = []
    if _is_true(context, 'use_lifecycle'):
        node = LifecycleNode(executable='stereo_lifecycle_node', **stereo)
        actions.append(node)
        if _is_true(context, 'lifecycle_autostart'):
            # Without a lifecycle manager: configure at start, activate once configured.
            # start_state: only configuring -> inactive, so a later deactivate is not undone.
            actions.append(RegisterEventHandler(OnStateTransition(
                target_lifecycle_node=node, start_state='configuring', goal_state='inactive',
                entities=[EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                                      transition_id=Transition.TRANSITION_ACTIVATE))])))
            actions.append(EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                                       transition_id=Transition.TRANSITION_CONFIGURE)))
    else:
        actions.append(Node(executable='stereo_node', **stereo))
    if _is_true(context, 'use_sample_source'):
        transport = overrides.get('image_transport', 'raw')
        actions.append(Node(package='sgru_ros', executable='sample_source', name='sample_source',
                            namespace=namespace,
                            parameters=[{'image_transport': transport, 'distort': overrides.get('rectify') is True}],
                            remappings=_camera_remappings(context, publisher=True), output='screen'))
    if _is_true(context, 'use_rviz'):
        frame = LaunchConfiguration('rviz_fixed_frame').perform(context)
        with open(os.path.join(share, 'config', 'stereo.rviz')) as f:
            config = rviz_config(f.read(), namespace, frame)
        fd, path = tempfile.mkstemp(prefix='sgru_ros_', suffix='.rviz')
        with os.fdopen(fd, 'w') as f:
            f.write(config)
        actions.append(Node(package='rviz2', executable='rviz2', name='rviz2', namespace=namespace,
                            arguments=['-d', path, '-f', frame]))
    return actions


def generate_launch_description():
    share = get_package_share_directory('sgru_ros')
    arguments = [
        DeclareLaunchArgument('namespace', default_value='', description='Namespace of the stereo camera'),
        DeclareLaunchArgument('left_namespace', default_value='left',
                              description='Namespace of the left camera, relative to namespace'),
        DeclareLaunchArgument('right_namespace', default_value='right',
                              description='Namespace of the right camera, relative to namespace'),
        DeclareLaunchArgument('params_file', default_value=os.path.join(share, 'config', 'stereo.yaml'),
                              description='Parameter file of the stereo node'),
        *[DeclareLaunchArgument(name, default_value='', description=f'{text} (default: from params_file)')
          for name, (_, text) in NODE_ARGUMENTS.items()],
        DeclareLaunchArgument('use_lifecycle', default_value='false',
                              description='Start the managed (lifecycle) node: unconfigured until a lifecycle '
                                          'manager (or lifecycle_autostart) configures and activates it'),
        DeclareLaunchArgument('lifecycle_autostart', default_value='false',
                              description='With use_lifecycle: configure and activate it at start'),
        DeclareLaunchArgument('use_sample_source', default_value='false',
                              description='Also start the sample source (Middlebury Motorcycle pair; with '
                                          'rectify:=true it publishes raw, distorted images)'),
        DeclareLaunchArgument('use_rviz', default_value='false',
                              description='Start rviz2 with config/stereo.rviz, its topics under namespace'),
        DeclareLaunchArgument('rviz_fixed_frame', default_value='stereo_left_optical_frame',
                              description="rviz2's fixed frame: the camera's optical frame (the sample source's "
                                          'by default) or a frame of your TF tree'),
    ]
    return LaunchDescription(arguments + [OpaqueFunction(function=_launch_setup)])
